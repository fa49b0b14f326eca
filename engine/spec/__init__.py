"""The spec tree: find, parse, validate and compile providers.d/, ingress.d/, pricing.d/ and routes.yaml."""
