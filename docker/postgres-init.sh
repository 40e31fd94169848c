#!/bin/bash
# Creates the lineage database and its owner at the first start of the PostgreSQL volume.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$LINEAGE_DB_PASSWORD" <<'SQL'
CREATE USER gen WITH PASSWORD :'pw';
CREATE DATABASE lineage OWNER gen;
SQL
