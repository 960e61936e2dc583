// Placeholder: replaced by the Identify implementation.
