// Placeholder: replaced by the Identity implementation.
