// Placeholder: replaced by the Noise implementation.
