"""Who may call: API keys and tenants, rate limits, usage accounting, audit."""
