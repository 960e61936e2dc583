// Placeholder: replaced by the Multiformats implementation.
