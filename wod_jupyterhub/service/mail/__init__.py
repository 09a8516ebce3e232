"""The portal's mail API: verb mails in, participant mails relayed.

The registration portal in use (api-db) does not call REST: it mails its
verbs to ``<WODUSER>@<backend>`` on the backend's SMTP port and mails its
participants through the same port, expecting the backend to relay them.

* :mod:`.settings`: ``c.WodMail.*``.
* :mod:`.message`: pure parsing (the portal's raw dialog, a standard
  message, a verb subject) and the rebuilt message a relay sends.
* :mod:`.listener`: a lenient SMTP listener on asyncio that accepts the
  portal's bytes whatever their timing, and standard clients.
* :mod:`.ingress`: what a received mail becomes (an operation, a relayed
  mail, or a refusal with a log line and a metric), shared by the listener
  and ``wod mail``.
* :mod:`.relay`: the durable outbox of participant mails and its delivery
  loop to the smarthost.

Core: nothing here imports the hub.
"""
