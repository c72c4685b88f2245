"""An SMTP submission server for Fabrik's e-mail notifier tests (aiosmtpd, a real SMTP
implementation): STARTTLS with a certificate generated on start, AUTH PLAIN/LOGIN for one
user, or, with --plain, no TLS at all (to show that Fabrik then sends no credentials);
--reject ADDRESS answers 550 to that recipient.

Prints `PORT <n>` and `CA <path>` once listening, then one `MAIL <json>` line per accepted
message and one `EVENT <json>` line per AUTH attempt or connection.
"""

import argparse
import asyncio
import datetime
import email
import email.policy
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def say(kind, payload):
    print(kind, json.dumps(payload), flush=True)


def make_certificate(directory):
    """A throwaway CA and a server certificate for `localhost` signed by it (webpki, which
    Fabrik's TLS uses, does not accept a self-signed certificate as its own anchor)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public_key, signing_key, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabrik test mail CA")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = build(name, ca_name, key.public_key(), ca_key, False)
    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "smtp.pem")
    key_path = os.path.join(directory, "smtp.key")
    with open(ca_path, "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return ca_path, cert_path, key_path


class Handler:
    def __init__(self, reject=()):
        self.reject = set(reject)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.reject:
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        say("EVENT", {"ehlo": hostname, "tls": session.ssl is not None})
        return responses

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        say(
            "MAIL",
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "subject": str(message["subject"]),
                "to": str(message["to"]),
                "alert": str(message["x-fabrik-alert"]),
                "message_id": str(message["message-id"]),
                "references": str(message["references"]),
                "auto_submitted": str(message["auto-submitted"]),
                "body": body.get_content() if body is not None else "",
                "tls": session.ssl is not None,
                "user": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
            },
        )
        return "250 OK queued"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        say("EVENT", {"auth": mechanism, "ok": ok, "tls": session.ssl is not None})
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    return check


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plain", action="store_true", help="no STARTTLS")
    parser.add_argument("--user", default="fabrik")
    parser.add_argument("--password", default="s3cret")
    parser.add_argument("--reject", action="append", default=[], help="refuse this recipient (550)")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    directory = tempfile.mkdtemp(prefix="fabrik-smtp-")
    kwargs = {}
    if not args.plain:
        ca, cert, key = make_certificate(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        kwargs = dict(
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator(args.user, args.password),
        )
    else:
        ca = ""
        # A relay that takes anything and would accept AUTH in the clear: Fabrik must not try.
        kwargs = dict(
            auth_require_tls=False,
            authenticator=authenticator(args.user, args.password),
        )
    controller = Controller(Handler(args.reject), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("PORT", port, flush=True)
    print("CA", ca, flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
