#!/usr/bin/perl
# Reads one delivery report with sisimai (Debian package libsisimai-perl, 4.25.x); prints what
# it found. Used by tests/dsn_parsers.rs.
#
# Output: "version<TAB>4.25.15", then one line per record sisimai returns, twice: first with the
# default options (bounces only), then with delivered => 1 (successful deliveries too):
#
#   record<TAB>bounces|all<TAB>RECIPIENT<TAB>ACTION<TAB>STATUS<TAB>REASON<TAB>ALIAS<TAB>AGENT
#
# Sisimai->make returns undef (no records) rather than an empty list; that prints nothing.
use strict;
use warnings;
use Sisimai;

my $path = shift @ARGV or die "usage: $0 REPORT.eml\n";
-r $path or die "$path: not readable\n";
print "version\t", Sisimai->version, "\n";

for my $mode ( [ 'bounces', 0 ], [ 'all', 1 ] ) {
    my ( $label, $delivered ) = @$mode;
    my $records = Sisimai->make( $path, 'delivered' => $delivered ) || [];
    for my $r (@$records) {
        my @f = (
            'record', $label, $r->recipient->address, $r->action, $r->deliverystatus,
            $r->reason, $r->alias, $r->smtpagent,
        );
        print join( "\t", map { my $v = $_ // ''; $v =~ s/[\t\r\n]+/ /g; $v } @f ), "\n";
    }
}
