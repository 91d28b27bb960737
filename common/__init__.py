"""Shared building blocks of Hookpost: models, settings, AMQP topology and client, signing, errors."""
