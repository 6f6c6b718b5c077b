//! Element-wise functions `y = f(x)`: the gradient is `dx = g f'(x)`, with `f'` written in
//! whichever of x and y is cheaper.

use tensor::Tensor;

use crate::{Backward, Var};

/// Which function a [`UnaryRule`] differentiates.
#[derive(Clone, Copy, Debug)]
enum UnaryOp {
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Square,
    Tanh,
    Sigmoid,
    Silu,
    Relu,
    Sin,
    Cos,
}

/// The backward rule of every element-wise function, `dx = g f'(x)`:
///
/// | f | f'(x) |
/// |---|---|
/// | abs | sign(x) (0 at 0, as PyTorch) |
/// | exp | y |
/// | log | 1 / x |
/// | sqrt | 1 / (2 y) |
/// | rsqrt (x^-1/2) | -x^-3/2 / 2 = -y^3 / 2 |
/// | square | 2 x |
/// | tanh | 1 - y^2 |
/// | sigmoid | y (1 - y) |
/// | silu (x s(x), s = sigmoid) | s(x) (1 + x (1 - s(x))) |
/// | relu | [x > 0] |
/// | sin | cos x |
/// | cos | -sin x |
struct UnaryRule {
    op: UnaryOp,
    x: Tensor,
    y: Tensor,
}

impl Backward for UnaryRule {
    fn name(&self) -> &'static str {
        match self.op {
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Square => "square",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Relu => "relu",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let (x, y) = (&self.x, &self.y);
        let derivative = match self.op {
            UnaryOp::Abs => x.map(|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }),
            UnaryOp::Exp => y.clone(),
            UnaryOp::Log => x.map(|v| 1.0 / v),
            UnaryOp::Sqrt => y.map(|v| 0.5 / v),
            UnaryOp::Rsqrt => y.map(|v| -0.5 * v * v * v),
            UnaryOp::Square => x.mul_scalar(2.0),
            UnaryOp::Tanh => y.map(|v| 1.0 - v * v),
            UnaryOp::Sigmoid => y.map(|v| v * (1.0 - v)),
            UnaryOp::Silu => x.map(|v| {
                let s = 1.0 / (1.0 + (-v).exp());
                s * (1.0 + v * (1.0 - s))
            }),
            UnaryOp::Relu => x.map(|v| if v > 0.0 { 1.0 } else { 0.0 }),
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => x.sin().neg(),
        };
        vec![Some(g.mul(&derivative))]
    }
}

fn unary(op: UnaryOp, x: &Var) -> Var {
    let v = x.value();
    let y = match op {
        UnaryOp::Abs => v.abs(),
        UnaryOp::Exp => v.exp(),
        UnaryOp::Log => v.log(),
        UnaryOp::Sqrt => v.sqrt(),
        UnaryOp::Rsqrt => v.rsqrt(),
        UnaryOp::Square => v.square(),
        UnaryOp::Tanh => v.tanh(),
        UnaryOp::Sigmoid => v.sigmoid(),
        UnaryOp::Silu => v.silu(),
        UnaryOp::Relu => v.relu(),
        UnaryOp::Sin => v.sin(),
        UnaryOp::Cos => v.cos(),
    };
    let rule = UnaryRule {
        op,
        x: v.clone(),
        y: y.clone(),
    };
    Var::from_op(y, rule, &[x])
}

impl Var {
    /// `-self`.
    pub fn neg(&self) -> Var {
        self.affine(-1.0, 0.0)
    }
    /// `|self|`.
    pub fn abs(&self) -> Var {
        unary(UnaryOp::Abs, self)
    }
    /// `e^self`.
    pub fn exp(&self) -> Var {
        unary(UnaryOp::Exp, self)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Var {
        unary(UnaryOp::Log, self)
    }
    /// Square root.
    pub fn sqrt(&self) -> Var {
        unary(UnaryOp::Sqrt, self)
    }
    /// `1 / sqrt(self)`.
    pub fn rsqrt(&self) -> Var {
        unary(UnaryOp::Rsqrt, self)
    }
    /// `self^2`.
    pub fn square(&self) -> Var {
        unary(UnaryOp::Square, self)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Var {
        unary(UnaryOp::Tanh, self)
    }
    /// Logistic sigmoid `1 / (1 + e^-x)`.
    pub fn sigmoid(&self) -> Var {
        unary(UnaryOp::Sigmoid, self)
    }
    /// SiLU (swish): `x * sigmoid(x)`.
    pub fn silu(&self) -> Var {
        unary(UnaryOp::Silu, self)
    }
    /// `max(x, 0)`.
    pub fn relu(&self) -> Var {
        unary(UnaryOp::Relu, self)
    }
    /// Sine.
    pub fn sin(&self) -> Var {
        unary(UnaryOp::Sin, self)
    }
    /// Cosine.
    pub fn cos(&self) -> Var {
        unary(UnaryOp::Cos, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    #[test]
    fn smooth_functions_pass_gradcheck() {
        // Smooth functions of inputs of order 1 in f32, h = 1e-2: default tolerances.
        let x = randn(&[5, 7], 11);
        let positive = x.map(|v| v.abs() + 0.5);
        let tol = Tolerance::default();
        type Case<'a> = (&'a str, fn(&Var) -> Var, &'a Tensor);
        let cases: [Case; 12] = [
            ("neg", Var::neg, &x),
            ("exp", Var::exp, &x),
            ("log", Var::log, &positive),
            ("sqrt", Var::sqrt, &positive),
            ("rsqrt", Var::rsqrt, &positive),
            ("square", Var::square, &x),
            ("tanh", Var::tanh, &x),
            ("sigmoid", Var::sigmoid, &x),
            ("silu", Var::silu, &x),
            ("sin", Var::sin, &x),
            ("cos", Var::cos, &x),
            ("abs", Var::abs, &positive.mul(&x.map(f32::signum))),
        ];
        for (name, f, input) in cases {
            gradcheck(|v| f(&v[0]), std::slice::from_ref(input), tol)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn relu_passes_gradcheck_away_from_zero() {
        // relu has a kink at 0: keep |x| >= 0.5 so x +- h never crosses it.
        let x = randn(&[6, 5], 12).map(|v| if v >= 0.0 { v + 0.5 } else { v - 0.5 });
        gradcheck(|v| v[0].relu(), &[x], Tolerance::default()).unwrap();
    }
}
