"""Example web apps on s3-outbox (see README, "Adopting s3-outbox in three steps")."""
