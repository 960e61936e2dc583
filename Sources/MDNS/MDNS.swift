// The mDNS discovery target (issue 4).
