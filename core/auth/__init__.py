"""Authentication: API keys and RS256 access tokens, both resolving to a Principal."""
