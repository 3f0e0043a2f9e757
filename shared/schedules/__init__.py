"""Schedules: cron templates that submit jobs; use cases, repository, views."""
