// Placeholder: replaced by the Yamux implementation.
