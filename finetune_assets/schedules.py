"""`weekly_finetune_schedule`: Sunday 02:00, filling the week that just ended (see partitions.py)."""

import dagster as dg

from finetune_assets.jobs import finetune_cycle_job

weekly_finetune_schedule = dg.build_schedule_from_partitioned_job(
    finetune_cycle_job,
    name="weekly_finetune_schedule",
    description="Weekly training cycle (cron from the partitions: 0 2 * * 0 in the configured timezone).",
)
