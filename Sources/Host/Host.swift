// Placeholder: replaced by the Host implementation.
