"""A MySQL/MariaDB database backend that connects through the first of several hosts that is up
and ready (`DATABASE_URL=mysql://user:pass@node1:3306,node2:3306,node3:3306/ledger`)."""
