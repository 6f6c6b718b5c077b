//! Neural-network building blocks: the parameter store, the [`Module`] trait and layers.
//! Parameter names follow PyTorch's (`weight`, `bias`) under the prefix of the store handle a
//! layer was built with.

mod ctx;
pub mod init;
mod layers;
mod linear;
mod store;

pub use ctx::{Ctx, Module, Sequential};
pub use layers::{layer_norm, Conv2d, Dropout, GroupNorm, LayerNorm, Relu, Silu};
pub use linear::{Linear, SelfAttention};
pub use store::ParamStore;
