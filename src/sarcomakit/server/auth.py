"""Optional token authentication of the annotation server, with two roles: annotator and admin.

The token file has one user per line, ``TOKEN ROLE [NAME]`` (``#`` starts a comment)::

    3f9c0e...  admin      dr-smith
    a81b77...  annotator  student-1

A client sends ``Authorization: Bearer TOKEN``. An annotator may read, upload images, infer, use sessions
and active learning and save labels; an admin may also start and stop training and delete images and labels.
Without a token file the server is open (it binds to 127.0.0.1 by default, so only the local user reaches
it). A missing or unknown token is answered 401, a known token without the role 403.

3D Slicer's MONAI Label module asks for a user name and password and exchanges them at ``/auth/token``
(MONAI Label's OAuth2 password flow); here the password is the user's token, and the access token returned
is that same token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from sarcomakit.core.errors import UserInputError

ROLES: tuple[str, ...] = ("annotator", "admin")
#: What each role may do, cumulative: an admin may do all an annotator may.
ROLE_RANK = {"annotator": 0, "admin": 1}


@dataclass(frozen=True)
class User:
    """Who made a request: a name and a role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """True when this user's role includes ``role``."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


#: The user of an open server (no token file): everything is allowed.
LOCAL_ADMIN = User("local", "admin")


class TokenAuth:
    """Tokens read from a token file (see the module docstring)."""

    def __init__(self, users: dict[str, User]) -> None:
        self._users = dict(users)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        """Read a token file.

        Raises:
            UserInputError: missing file, a malformed line, an unknown role, a short or repeated token.
        """
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise UserInputError(f"cannot read the token file: {error.strerror}.", path=p) from error
        users: dict[str, User] = {}
        for number, raw in enumerate(lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) not in (2, 3) or fields[1] not in ROLES:
                raise UserInputError(f"line {number} is not 'TOKEN ROLE [NAME]' with ROLE one of {', '.join(ROLES)}.",
                                     path=p)
            token, role = fields[0], fields[1]
            if len(token) < 16:
                raise UserInputError(f"line {number}: the token is shorter than 16 characters.", path=p,
                                     fix="make one with python -c 'import secrets; print(secrets.token_hex())'.")
            if token in users:
                raise UserInputError(f"line {number}: this token is already given to another user.", path=p)
            users[token] = User(fields[2] if len(fields) == 3 else f"user{number}", role)
        if not users:
            raise UserInputError("the token file lists no user.", path=p, fix="add a line 'TOKEN admin NAME'.")
        return cls(users)

    def user(self, token: str) -> User | None:
        """The user holding ``token`` (compared in constant time), None when unknown."""
        found = None
        for known, user in self._users.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return found

    def login(self, name: str, password: str) -> str | None:
        """The token of user ``name`` when ``password`` is that token (Slicer's login form), else None."""
        user = self.user(password)
        return password if user is not None and user.name == name else None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None when absent or of another scheme)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
