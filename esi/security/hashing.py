"""argon2id: the hashes a clients file holds instead of secrets, and checking a secret against one."""

from __future__ import annotations

import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["dummy_hash_like", "hash_secret", "is_argon2_hash", "verify_secret"]

#: verifies any argon2 hash: the parameters are read from the hash itself
_VERIFIER = argon2.PasswordHasher()


def hash_secret(secret: str, *, hasher: argon2.PasswordHasher | None = None) -> str:
    """The argon2id hash of a password or an API key, for the clients file.

    The default hasher is argon2-cffi's: argon2id with RFC 9106's second recommended profile (64 MiB, 3 passes,
    4 lanes).
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError("a password or an API key cannot be empty")
    return (hasher or argon2.PasswordHasher()).hash(secret)


def verify_secret(encoded_hash: str, secret: str) -> bool:
    """Whether `secret` is the one `encoded_hash` was made from (argon2 compares in constant time). Slow on purpose."""
    try:
        return _VERIFIER.verify(encoded_hash, secret)
    except (VerificationError, InvalidHashError):
        return False


def is_argon2_hash(value: str) -> bool:
    """Whether `value` is a well-formed argon2 hash (its parameters can be read)."""
    try:
        argon2.extract_parameters(value)
    except InvalidHashError:
        return False
    return True


def dummy_hash_like(hashes: list[str]) -> str:
    """A hash of a random secret with the parameters most of `hashes` use: verifying against it costs what
    verifying against theirs costs (for refusals that must take the same time whoever is named)."""
    params = [argon2.extract_parameters(h) for h in hashes]
    common = max(params, key=params.count)
    return argon2.PasswordHasher.from_parameters(common).hash(secrets.token_urlsafe(16))
