"""The HTML a site's owner pastes into a landing page: its form, posting to this relay.

Pure: the site's form settings and the relay's public address in, the
snippet's text out (the page shows it escaped, with a copy button). It is
README's "The form snippet" with this site's id, fields and honeypot.
"""

from __future__ import annotations

from html import escape

from relay.core.model import FormSettings

DEFAULT_FIELDS = ("name", "email", "message")


def form_snippet(base_url: str, site_id: str, form: FormSettings) -> str:
    fields = list(dict.fromkeys([*DEFAULT_FIELDS, *form.required]))
    site = escape(site_id, quote=True)
    lines = [
        f'<form method="post" action="{escape(base_url)}/api/send-inquiry">',
        f'  <input type="hidden" name="landingPageId" value="{site}">',
        '  <input type="hidden" name="formToken">',
    ]
    for name in fields:
        field = escape(name, quote=True)
        required = " required" if name in form.required else ""
        if name == "message":
            lines.append(f'  <textarea name="formData[{field}]"{required}></textarea>')
        elif name in ("email", form.reply_to_field):
            lines.append(f'  <input type="email" name="formData[{field}]"{required}>')
        else:
            lines.append(f'  <input name="formData[{field}]"{required}>')
    if form.honeypot_field:
        trap = escape(form.honeypot_field, quote=True)
        lines += [
            "  <!-- the honeypot: hidden from people, so they leave it empty -->",
            f'  <input name="formData[{trap}]" tabindex="-1" autocomplete="off"',
            '         style="position:absolute; left:-10000px">',
        ]
    lines += [
        "  <button>Send</button>",
        "</form>",
        "<script>",
        f'  fetch("{escape(base_url)}/api/form-token?landingPageId={site}")',
        "    .then((reply) => reply.json())",
        '    .then(({token}) => { document.querySelector("[name=formToken]").value = token; });',
        "</script>",
    ]
    return "\n".join(lines) + "\n"
