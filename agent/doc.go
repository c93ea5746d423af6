// Package agent is the nfsteer daemon of one node: it loads the service map,
// installs the node's rules, reads the first packets of new flows from
// NFQUEUE, decides each flow's next hop and answers with the mark that
// steers it. When it stops it leaves its rules for the next agent and
// announces its restart (Config.KeepRules), or removes them.
//
// It is a set of Run(ctx) tasks under one errgroup. It needs CAP_NET_ADMIN
// in the node's network namespace.
package agent
