"""x402, the second payment method: each call paid with an EIP-3009 authorization."""
