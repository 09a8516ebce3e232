"""The portal's mail API: verb mails in, participant mails relayed."""
