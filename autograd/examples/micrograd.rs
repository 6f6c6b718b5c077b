//! A scalar expression differentiated by the tape, in the spirit of micrograd: every value is a
//! 0-d tensor, and the printed gradients can be checked by hand.
//!
//! Run with `cargo run --release -p autograd --example micrograd`.

use autograd::Graph;
use tensor::Tensor;

fn main() {
    let g = Graph::new();
    let a = g.leaf(Tensor::scalar(-4.0));
    let b = g.leaf(Tensor::scalar(2.0));

    let c = &a + &b; // -2
    let d = &(&a * &b) + &b.pow_scalar(3.0); // -8 + 8 = 0
    let e = &c.add_scalar(1.0) * &c.mul_scalar(2.0); // (-1) * (-4) = 4
    let f = &(&d + &e).relu() * &a.tanh(); // relu(4) * tanh(-4)
    let h = &f.exp() / &c.square(); // e^f / 4
    let loss = h.log().neg(); // -(f - ln 4)

    loss.backward();
    println!("loss = {:.6}", loss.value().item());
    println!("dloss/da = {:.6}", a.grad().unwrap().item());
    println!("dloss/db = {:.6}", b.grad().unwrap().item());
    println!();
    println!("By hand: loss = -f + ln c^2 with f = (ab + b^3 + 2c^2 + 2c) tanh(a) and c = a + b.");
    let (av, bv) = (-4.0f64, 2.0f64);
    let cv = av + bv;
    let s = av * bv + bv.powi(3) + 2.0 * cv * cv + 2.0 * cv;
    let t = av.tanh();
    let ds_da = bv + 4.0 * cv + 2.0;
    let ds_db = av + 3.0 * bv * bv + 4.0 * cv + 2.0;
    let dl_da = -(ds_da * t + s * (1.0 - t * t)) + 2.0 / cv;
    let dl_db = -(ds_db * t) + 2.0 / cv;
    println!("dloss/da = {dl_da:.6}, dloss/db = {dl_db:.6}");
}
