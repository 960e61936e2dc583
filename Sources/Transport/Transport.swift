// Placeholder: replaced by the Transport implementation.
