"""The websocket's way, one module per step: ``gateway`` (accept, charge, the receive loop)
→ ``session`` (rate limit, ``seq_num``) → ``protocol`` (parse, check) → ``model_cache``
(lookup; ``model_loader`` on a miss) → ``features`` (the row) → the family's predictor
(``batching`` for costly ones) → ``protocol`` (the answer)."""
