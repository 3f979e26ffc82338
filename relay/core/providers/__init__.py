"""Provider events in: verify a bounce, complaint or delivery report from SES (via SNS),
Mailgun, SendGrid or Postmark the provider's documented way, and normalise it.

Pure: no sockets, no clock (``now`` is passed in), no storage. One module per provider;
`model` holds what they share (`ProviderEvent`, `Accepted`, `Refused`). What the endpoint
does with each:

- SES: ``sns.parse_envelope(body)``; fetch ``envelope.signing_cert_url`` (already checked
  by `sns.signing_cert_url_allowed`; over verified HTTPS, cached), then
  ``sns.verify_envelope(envelope, pem, topic_arns=...)``. A ``SubscriptionConfirmation``
  is confirmed by a GET of ``envelope.subscribe_url`` once `sns.subscribe_url_allowed`;
  a ``Notification`` gives its events with ``ses.envelope_events(envelope)``.
- Mailgun: ``mailgun.verify(body, signing_key, now=...)``.
- SendGrid: ``sendgrid.verify(body, signature_header, timestamp_header, key, now=...)``,
  the key loaded once from the configuration with ``sendgrid.load_public_key``.
- Postmark: ``postmark.verify(body, authorization_header, username, password)``.

``Accepted.replay_key``, when not None, is the caller's to record and refuse when seen
again (a Mailgun token, a digest of a SendGrid request, an SNS MessageId). Every function
answers a verdict and never raises on what a request carries.
"""
