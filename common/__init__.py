"""Contacto Billing domain code: plain async functions and pure policy, no dramatiq here."""
