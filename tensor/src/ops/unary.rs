//! PLACEHOLDER: unary ops, to be written.
