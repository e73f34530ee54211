"""Azure adapters against local servers that speak their REST APIs."""
