//! Broadcasting arithmetic: `add`, `sub`, `mul`, `div`, `maximum`, `minimum`, `pow`, and their
//! scalar forms.
//!
//! For `y = f(a, b)` computed on the broadcast shape, the gradient for each operand is the
//! element-wise partial derivative times `g = dL/dy`, summed back over the axes the operand was
//! broadcast along (`Tensor::sum_to`).

use tensor::Tensor;

use super::unbroadcast;
use crate::{Backward, Var};

/// Which binary op a [`BinaryRule`] differentiates.
#[derive(Clone, Copy)]
enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    Pow,
}

/// The backward rule of every broadcasting binary op `y = f(a, b)`:
///
/// - add: `da = g`, `db = g`
/// - sub: `da = g`, `db = -g`
/// - mul: `da = g b`, `db = g a`
/// - div: `da = g / b`, `db = -g a / b^2 = -g y / b`
/// - maximum: `da = g [a > b] + g/2 [a = b]`, `db` likewise (ties share the gradient, as in
///   PyTorch); minimum mirrors it
/// - pow: `da = g b a^(b-1)`, `db = g y ln a` (taken as 0 where `a <= 0`, where ln a is not real)
///
/// each followed by summing back to the operand's shape.
struct BinaryRule {
    op: BinaryOp,
    a: Tensor,
    b: Tensor,
    y: Tensor,
}

impl Backward for BinaryRule {
    fn name(&self) -> &'static str {
        match self.op {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
        }
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let (a, b, y) = (&self.a, &self.b, &self.y);
        let (ga, gb) = match self.op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), g.neg()),
            BinaryOp::Mul => (g.mul(b), g.mul(a)),
            BinaryOp::Div => (g.div(b), g.mul(y).div(b).neg()),
            BinaryOp::Maximum | BinaryOp::Minimum => {
                let wins = |x: f32, other: f32| match self.op {
                    BinaryOp::Maximum if x > other => 1.0,
                    BinaryOp::Minimum if x < other => 1.0,
                    _ if x == other => 0.5,
                    _ => 0.0,
                };
                let shape = g.shape();
                let (a, b) = (a.broadcast_to(shape), b.broadcast_to(shape));
                let share = |x: &Tensor, other: &Tensor| {
                    let data = x
                        .data()
                        .iter()
                        .zip(other.data())
                        .map(|(&p, &q)| wins(p, q))
                        .collect();
                    g.mul(&Tensor::from_vec(data, shape))
                };
                (share(&a, &b), share(&b, &a))
            }
            BinaryOp::Pow => {
                let ga = if needs[0] {
                    g.mul(b).mul(&a.pow(&b.sub_scalar(1.0)))
                } else {
                    Tensor::zeros(&[])
                };
                let gb = if needs[1] {
                    let log_a = a.map(|x| if x > 0.0 { x.ln() } else { 0.0 });
                    g.mul(y).mul(&log_a)
                } else {
                    Tensor::zeros(&[])
                };
                (ga, gb)
            }
        };
        vec![
            needs[0].then(|| unbroadcast(ga, a.shape())),
            needs[1].then(|| unbroadcast(gb, b.shape())),
        ]
    }
}

fn binary(op: BinaryOp, a: &Var, b: &Var) -> Var {
    let (x, z) = (a.value(), b.value());
    let y = match op {
        BinaryOp::Add => x.add(z),
        BinaryOp::Sub => x.sub(z),
        BinaryOp::Mul => x.mul(z),
        BinaryOp::Div => x.div(z),
        BinaryOp::Maximum => x.maximum(z),
        BinaryOp::Minimum => x.minimum(z),
        BinaryOp::Pow => x.pow(z),
    };
    let rule = BinaryRule {
        op,
        a: x.clone(),
        b: z.clone(),
        y: y.clone(),
    };
    Var::from_op(y, rule, &[a, b])
}

impl Var {
    /// `self + other`, broadcast.
    pub fn add(&self, other: &Var) -> Var {
        binary(BinaryOp::Add, self, other)
    }
    /// `self - other`, broadcast.
    pub fn sub(&self, other: &Var) -> Var {
        binary(BinaryOp::Sub, self, other)
    }
    /// `self * other`, broadcast.
    pub fn mul(&self, other: &Var) -> Var {
        binary(BinaryOp::Mul, self, other)
    }
    /// `self / other`, broadcast.
    pub fn div(&self, other: &Var) -> Var {
        binary(BinaryOp::Div, self, other)
    }
    /// Element-wise maximum, broadcast.
    pub fn maximum(&self, other: &Var) -> Var {
        binary(BinaryOp::Maximum, self, other)
    }
    /// Element-wise minimum, broadcast.
    pub fn minimum(&self, other: &Var) -> Var {
        binary(BinaryOp::Minimum, self, other)
    }
    /// `self ^ other`, broadcast.
    pub fn pow(&self, other: &Var) -> Var {
        binary(BinaryOp::Pow, self, other)
    }
}

/// `y = a * s + t` for constants `s`, `t`: `da = g s`. Serves add, sub, mul and div by a scalar.
struct AffineRule {
    scale: f32,
}

impl Backward for AffineRule {
    fn name(&self) -> &'static str {
        "affine_scalar"
    }
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        vec![Some(g.mul_scalar(self.scale))]
    }
}

/// `y = a^p` for a constant p: `da = g p a^(p-1)`.
struct PowScalarRule {
    a: Tensor,
    p: f32,
}

impl Backward for PowScalarRule {
    fn name(&self) -> &'static str {
        "pow_scalar"
    }
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        vec![Some(
            g.mul(&self.a.pow_scalar(self.p - 1.0)).mul_scalar(self.p),
        )]
    }
}

impl Var {
    /// `self * scale + shift` for constants.
    pub fn affine(&self, scale: f32, shift: f32) -> Var {
        let y = self.value().mul_scalar(scale).add_scalar(shift);
        Var::from_op(y, AffineRule { scale }, &[self])
    }
    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Var {
        self.affine(1.0, s)
    }
    /// `self * s`.
    pub fn mul_scalar(&self, s: f32) -> Var {
        self.affine(s, 0.0)
    }
    /// `self ^ p` for a constant exponent.
    pub fn pow_scalar(&self, p: f32) -> Var {
        let y = self.value().pow_scalar(p);
        Var::from_op(
            y,
            PowScalarRule {
                a: self.value().clone(),
                p,
            },
            &[self],
        )
    }
}

impl std::ops::Add for &Var {
    type Output = Var;
    fn add(self, other: &Var) -> Var {
        Var::add(self, other)
    }
}
impl std::ops::Sub for &Var {
    type Output = Var;
    fn sub(self, other: &Var) -> Var {
        Var::sub(self, other)
    }
}
impl std::ops::Mul for &Var {
    type Output = Var;
    fn mul(self, other: &Var) -> Var {
        Var::mul(self, other)
    }
}
impl std::ops::Div for &Var {
    type Output = Var;
    fn div(self, other: &Var) -> Var {
        Var::div(self, other)
    }
}
impl std::ops::Neg for &Var {
    type Output = Var;
    fn neg(self) -> Var {
        self.affine(-1.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// Smooth ops in f32 with h = 1e-2: the default tolerances (see [`Tolerance::default`]).
    const SMOOTH: Tolerance = Tolerance {
        step: 1e-2,
        atol: 1e-3,
        rtol: 1e-2,
        max_elements: 64,
    };

    #[test]
    fn broadcasting_ops_pass_gradcheck() {
        let shapes: [(&[usize], &[usize]); 4] = [
            (&[3, 4], &[3, 4]),
            (&[2, 3, 4], &[4]),
            (&[3, 1, 5], &[4, 1]),
            (&[2, 3], &[]),
        ];
        for (sa, sb) in shapes {
            let a = randn(sa, 1);
            let b = randn(sb, 2);
            let b_away = b.map(|x| {
                if x.abs() < 0.5 {
                    x.signum() * 0.5 + x
                } else {
                    x
                }
            });
            for (name, f) in [
                ("add", Var::add as fn(&Var, &Var) -> Var),
                ("sub", Var::sub),
                ("mul", Var::mul),
                ("div", Var::div),
            ] {
                let b = if name == "div" { &b_away } else { &b };
                gradcheck(|v| f(&v[0], &v[1]), &[a.clone(), b.clone()], SMOOTH)
                    .unwrap_or_else(|e| panic!("{name} {sa:?} {sb:?}: {e}"));
            }
        }
    }

    #[test]
    fn maximum_minimum_pass_gradcheck_away_from_ties() {
        // Kinks at a = b: keep the operands at least 0.1 apart (h = 1e-2 never crosses).
        let a = randn(&[4, 5], 3);
        let b = a.map(|x| x + 0.3);
        let b = b.map(|x| if (x * 7.0).sin() > 0.0 { x - 0.6 } else { x });
        for f in [Var::maximum as fn(&Var, &Var) -> Var, Var::minimum] {
            gradcheck(|v| f(&v[0], &v[1]), &[a.clone(), b.clone()], SMOOTH).unwrap();
        }
    }

    #[test]
    fn pow_passes_gradcheck_for_positive_bases() {
        let a = randn(&[3, 4], 4).map(|x| x.abs() + 0.5);
        let p = randn(&[4], 5);
        gradcheck(|v| v[0].pow(&v[1]), &[a.clone(), p], SMOOTH).unwrap();
        gradcheck(|v| v[0].pow_scalar(2.5), std::slice::from_ref(&a), SMOOTH).unwrap();
        gradcheck(
            |v| (&v[0].affine(3.0, -1.0) * &v[0]).mul_scalar(0.5),
            &[a],
            SMOOTH,
        )
        .unwrap();
    }

    #[test]
    fn ties_share_the_gradient() {
        let g = crate::Graph::new();
        let a = g.leaf(Tensor::from_vec(vec![1.0, 2.0], &[2]));
        let b = g.leaf(Tensor::from_vec(vec![1.0, 3.0], &[2]));
        a.maximum(&b).backward_with(Tensor::ones(&[2]));
        assert_eq!(a.grad().unwrap().data(), &[0.5, 0.0]);
        assert_eq!(b.grad().unwrap().data(), &[0.5, 1.0]);
    }
}
