"""One partition per weekly training cycle.

The cron is exactly `0 2 * * 0` (Sunday 02:00 in the configured timezone). With the default `end_offset=0`
the newest valid key at any moment is the last *completed* week: the Sunday schedule fills the week that
just ended, and a mid-week `training_data_sensor` run rematerializes that same newest key (the ledger makes
it train only on posts no earlier cycle used). The in-progress week is never a key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dagster as dg

from finetune_assets.settings import Settings, get_settings


def weekly_partitions(settings: Settings) -> dg.WeeklyPartitionsDefinition:
    return dg.WeeklyPartitionsDefinition(
        start_date=settings.partitions_start_date.isoformat(),
        hour_offset=2,
        timezone=settings.timezone,
    )


def current_cycle(partitions: dg.WeeklyPartitionsDefinition, now: datetime) -> str | None:
    """The newest valid partition key at `now`: the training cycle a run started now belongs to."""
    with dg.partition_loading_context(effective_dt=now):
        return partitions.get_last_partition_key()


weekly_cycle_partitions = weekly_partitions(get_settings())


def cycle_asset(**kwargs: Any) -> Any:
    """`@dg.asset` for one step of the weekly cycle: same partitions, same group."""
    return dg.asset(partitions_def=weekly_cycle_partitions, group_name="finetune", **kwargs)
