"""Training: the Prismatic one-stage recipe under DeepSpeed ZeRO-3 (loop, schedule, engine, resume)."""
