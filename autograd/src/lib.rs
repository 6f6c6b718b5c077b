//! Reverse-mode automatic differentiation over `tensor` (see issue: autograd). Empty for now.
