"""Who a caller is: Sign-In with Ethereum and the API keys it yields."""
