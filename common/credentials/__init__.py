"""Billing console credentials: one-time temporary passwords, login with lockout, password
change (`logins`), and the password hashing and policy they use (`passwords`)."""
