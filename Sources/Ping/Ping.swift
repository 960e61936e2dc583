// Placeholder: replaced by the Ping implementation.
