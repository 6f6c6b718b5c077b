//! PLACEHOLDER: softmax ops, to be written.
