"""One request, stage by stage: validate, plan (route), call upstreams with retries and fallback, price."""
