"""How a paid call is paid for: the payment method protocol, the pipeline every method
runs through, and the methods themselves (prepaid credits)."""
