"""Placeholder replaced below."""


def ensure_default_users(settings):
    return []
