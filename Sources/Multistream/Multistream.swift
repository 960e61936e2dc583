// Placeholder: replaced by the Multistream implementation.
