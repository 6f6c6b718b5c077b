//! Neural-network building blocks: the parameter store and modules.

mod store;

pub use store::ParamStore;
