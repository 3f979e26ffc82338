"""Provider events in: verify a bounce, complaint or delivery report from SES (via SNS),
Mailgun, SendGrid or Postmark the provider's documented way, and normalise it.

Pure: no sockets, no clock (``now`` is passed in), no storage. What needs the network
(the SNS signing certificate) is fetched by the caller, after `sns.signing_cert_url_allowed`
said yes, and passed in as bytes. One module per provider; `model` holds what they share.
"""
