#!/bin/sh
# Example only: root's password is "sampleos" (openssl passwd -6 -salt sampleos sampleos).
# A real OS leaves root locked and gives its users SSH keys.
set -e
usermod -p '$6$sampleos$6X3Q5pk2w3VBW0TFlOEpPzRCQpJ9rZ4QWAq9Znv8IWQhfUXKznXZ5HmtHUzY9LlILhKzU7R3HBSpC.YRtTTON/' root
