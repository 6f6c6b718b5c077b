//! Parameters: tensors that persist across training steps and collect gradients.

use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;

use tensor::Tensor;

use crate::tape::accumulate;

/// A parameter's value and accumulated gradient.
pub(crate) struct ParamData {
    pub(crate) value: Tensor,
    pub(crate) grad: Option<Tensor>,
}

/// A trainable tensor with its accumulated gradient, shared by handle: modules, the parameter
/// store and the optimizer all hold the same parameter. Each training step binds it to that
/// step's graph with [`crate::Graph::param`]; backward adds into its gradient, which stays until
/// [`Param::zero_grad`].
#[derive(Clone)]
pub struct Param(Rc<RefCell<ParamData>>);

impl Param {
    /// A parameter holding `value`, with no gradient yet.
    pub fn new(value: Tensor) -> Param {
        Param(Rc::new(RefCell::new(ParamData { value, grad: None })))
    }

    /// The current value (a cheap shared clone).
    pub fn value(&self) -> Tensor {
        self.0.borrow().value.clone()
    }

    /// The shape of the value.
    pub fn shape(&self) -> Vec<usize> {
        self.0.borrow().value.shape().to_vec()
    }

    /// Replaces the value. Panics if the shape changes.
    pub fn set_value(&self, value: Tensor) {
        let mut data = self.0.borrow_mut();
        assert_eq!(
            data.value.shape(),
            value.shape(),
            "Param::set_value: shape {:?} cannot replace {:?}",
            value.shape(),
            data.value.shape()
        );
        data.value = value;
    }

    /// The value and gradient, mutably borrowed until the guard drops (for optimizers that
    /// update many parameters at once).
    pub(crate) fn borrow_data(&self) -> RefMut<'_, ParamData> {
        self.0.borrow_mut()
    }

    /// Runs `f` on the value and the gradient for writing (what optimizers use).
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor, Option<&Tensor>) -> R) -> R {
        let mut data = self.0.borrow_mut();
        let ParamData { value, grad } = &mut *data;
        f(value, grad.as_ref())
    }

    /// The accumulated gradient, if any backward pass reached this parameter.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.borrow().grad.clone()
    }

    /// A borrow of the gradient without cloning the handle.
    pub fn grad_ref(&self) -> Ref<'_, Option<Tensor>> {
        Ref::map(self.0.borrow(), |d| &d.grad)
    }

    /// Replaces the gradient (used by gradient clipping).
    pub fn set_grad(&self, grad: Option<Tensor>) {
        self.0.borrow_mut().grad = grad;
    }

    /// Forgets the accumulated gradient.
    pub fn zero_grad(&self) {
        self.0.borrow_mut().grad = None;
    }

    /// Adds `g` to the gradient.
    pub(crate) fn accumulate_grad(&self, g: Tensor) {
        accumulate(&mut self.0.borrow_mut().grad, g);
    }

    /// The parameter's identity (shared by all its handles), for keying.
    pub(crate) fn id(&self) -> usize {
        Rc::as_ptr(&self.0) as usize
    }

    /// True if both handles refer to the same parameter.
    pub fn same_as(&self, other: &Param) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}
