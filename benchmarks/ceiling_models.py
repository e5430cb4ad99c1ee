"""The one table of the database ceiling (``benchmarks/ceilings.py``): a row like a small
outbox or status row, inserted then updated in one transaction."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class CeilingRow(Model):
    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=64, db_index=True)
    value = fields.IntField(default=0)
    payload = fields.TextField()
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField(null=True)

    class Meta:
        table = "bench_ceiling_rows"
