"""omnicc: contact-center features for Kamailio and Asterisk."""
