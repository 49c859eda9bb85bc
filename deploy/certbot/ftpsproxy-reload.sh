#!/usr/bin/env bash
# certbot deploy hook for ftpsproxy: after a renewal, copies the new certificate chain and
# key to /etc/ftpsproxy and reloads the service (SIGHUP: new sessions get the new
# certificate, running ones keep theirs; a pair that fails to load keeps the old one and
# the proxy logs why).
# Copies rather than pointing the configuration into /etc/letsencrypt: its live/ and
# archive/ directories are root's alone (0700), and the service user must read the key.
#
# Install: cp /opt/ftpsproxy/share/certbot/ftpsproxy-reload.sh \
#             /etc/letsencrypt/renewal-hooks/deploy/ftpsproxy-reload.sh
# or per certificate: certbot ... --deploy-hook /opt/ftpsproxy/share/certbot/ftpsproxy-reload.sh
# certbot sets RENEWED_LINEAGE (/etc/letsencrypt/live/NAME) and RENEWED_DOMAINS. With
# FTPSPROXY_DOMAIN set, other certificates' renewals are ignored. FTPSPROXY_CONFIG_DIR
# (default /etc/ftpsproxy), FTPSPROXY_GROUP (ftpsproxy) and FTPSPROXY_SERVICE
# (ftpsproxy.service) say where, for whom and what to reload.
set -euo pipefail

lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE is not set: run by certbot as a deploy hook}
config_dir=${FTPSPROXY_CONFIG_DIR:-/etc/ftpsproxy}
group=${FTPSPROXY_GROUP:-ftpsproxy}
service=${FTPSPROXY_SERVICE:-ftpsproxy.service}

if [[ -n ${FTPSPROXY_DOMAIN:-} && " ${RENEWED_DOMAINS:-} " != *" $FTPSPROXY_DOMAIN "* ]]; then
    exit 0
fi

# Both files are written next to their targets and renamed into place, so the proxy never
# reads half a file; the key first, then the certificate, then one reload for the pair.
install -m 0640 -o root -g "$group" "$lineage/privkey.pem" "$config_dir/key.pem.new"
install -m 0644 -o root -g root "$lineage/fullchain.pem" "$config_dir/cert.pem.new"
mv -f "$config_dir/key.pem.new" "$config_dir/key.pem"
mv -f "$config_dir/cert.pem.new" "$config_dir/cert.pem"

if systemctl is-active --quiet "$service"; then
    systemctl reload "$service"
    echo "ftpsproxy-reload: installed the certificate of $lineage and reloaded $service"
else
    echo "ftpsproxy-reload: installed the certificate of $lineage ($service is not running)"
fi
