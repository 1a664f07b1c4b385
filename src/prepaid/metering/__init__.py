"""Metering: customers by external id, usage events, holds for AI calls, metered sessions, webhooks out."""
