from tortoise import migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("kunpay", "0004_dead_letter_replay")]

    initial = False

    operations = [
        ops.AddIndex(
            model_name="Transaction",
            index=Index(fields=["status", "stale", "next_poll_at"]),
        ),
    ]
